""""Did it learn?" in step 5: the model a run started from and its trained adapter, scored on the
held-out questions training never saw (core.evaluate, run in a model process), shown as a chart
of each measure before and after, one plain line, and the questions whose answer changed."""
from __future__ import annotations

from .i18n import t

MAX_ROWS = 50  # changed answers listed


def measures(result: dict) -> list[tuple[str, float | None, float | None]]:
    """(shown name, base, trained) for accuracy (when the rewards judge correctness), the total
    reward and each reward, from greedy answers."""
    base, trained = result["greedy"]["base"], result["greedy"]["trained"]
    rows = []
    if "accuracy" in trained:
        rows.append((t("eval.measure.accuracy"), base.get("accuracy"), trained.get("accuracy")))
    rows.append((t("eval.measure.total"), base.get("total"), trained.get("total")))
    for name, value in (trained.get("rewards") or {}).items():
        rows.append((name, (base.get("rewards") or {}).get(name), value))
    return rows


def figure(result: dict):
    """Grouped bars, base against trained, one pair per measure, in the page's language."""
    import plotly.graph_objects as go

    rows = measures(result)
    names = [name for name, _, _ in rows]
    fig = go.Figure()
    for side, key, color in ((1, "eval.chart.base", "#9ca3af"),
                             (2, "eval.chart.trained", "#f97316")):
        values = [row[side] for row in rows]
        fig.add_trace(go.Bar(x=names, y=values, name=t(key), marker_color=color,
                             text=[_short(v) for v in values], textposition="outside"))
    top = max([v for _, b, a in rows for v in (b, a) if v is not None] + [1e-9])
    fig.update_yaxes(range=[min(0.0, *[v for _, b, a in rows for v in (b, a) if v is not None]),
                            top * 1.18])  # room for the numbers over the bars
    fig.update_layout(title=t("eval.chart.title", n=result.get("questions", 0)), height=320,
                      barmode="group", margin=dict(l=50, r=10, t=50, b=40),
                      yaxis_title=t("eval.chart.axis"),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0))
    return fig


def _short(value) -> str:
    return "" if value is None else f"{value:.2f}"


def summary(result: dict, which: str) -> str:
    """One line: how many questions, accuracy (or total reward) before and after, how many
    answers changed."""
    base, trained = result["greedy"]["base"], result["greedy"]["trained"]
    changed = sum(1 for item in result.get("items", []) if item.get("changed"))
    if "accuracy" in trained and base.get("accuracy") is not None:
        line = t("eval.summary.accuracy", n=result["questions"], which=which,
                 before=round(100 * base["accuracy"]), after=round(100 * trained["accuracy"]))
    else:
        line = t("eval.summary.total", n=result["questions"], which=which,
                 before=_short(base.get("total")), after=_short(trained.get("total")))
    return line + " " + t("eval.summary.changed", changed=changed, n=result["questions"])


def changed_table(result: dict) -> dict:
    """The questions whose greedy answer changed: question, right answer, both answers and
    their scores (a Dataframe value; its headers in the page's language)."""
    headers = [t(f"eval.table.{h}") for h in ("question", "answer", "base", "trained", "score")]
    rows = []
    for item in result.get("items", []):
        if not item.get("changed"):
            continue
        before, after = item["base"], item["trained"]
        mark = {True: " ✓", False: " ✗"}
        rows.append([item["question"], str(item.get("answer", "")),
                     before["completion"] + mark.get(before.get("correct"), ""),
                     after["completion"] + mark.get(after.get("correct"), ""),
                     f"{_short(before['total'])} → {_short(after['total'])}"])
    return {"headers": headers, "data": rows[:MAX_ROWS]}
