"""The studio in English and German, through Gradio's own translations.

Every text the page shows has a stable key; `locales/<lang>.json` maps each key to its text (one
file per language; settings are keyed by their config path: `settings.grpo.beta.label`).

- Texts fixed when the page is built (labels, help, headings, buttons, tab names) are markers,
  `L("key")`, that the browser translates (Gradio's `I18n`, passed to `launch`).
- Texts a handler writes (messages, tables, charts, summaries) are translated on the server,
  `t("key", n=3)`, in the language of the page that asked (`current()`).

One cookie, `aha-lang`, says the language of a page. A script in the page's head sets it from the
browser's language the first time, and makes the browser report that language to Gradio, so that
the page and the server always agree; the language switch at the top of the page changes the
cookie and reloads (the form comes back from the draft: nothing typed is lost).
"""
from __future__ import annotations

import contextvars
import functools
import json
from pathlib import Path

LANGUAGES = {"en": "English", "de": "Deutsch"}
DEFAULT = "en"
COOKIE = "aha-lang"
LOCALES = Path(__file__).with_name("locales")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("aha_lang", default=DEFAULT)


@functools.cache
def catalog(lang: str) -> dict[str, str]:
    """All texts of one language, key -> text."""
    with open(LOCALES / f"{lang}.json", encoding="utf-8") as f:
        texts = json.load(f)
    from .form import settings_info  # derived texts: each setting's help with its range
    texts.update(settings_info(texts))
    return texts


def current() -> str:
    """The language of the page whose request is being handled (English outside a request)."""
    return _current.get()


def t(key: str, lang: str | None = None, **params) -> str:
    """The text of `key` in the page's language (English where a translation is missing, the
    key itself where even that is: a test makes sure neither happens), filled with `params`."""
    text = catalog(lang or current()).get(key) or catalog(DEFAULT).get(key) or key
    return text.format(**params) if params else text


def core_template(prefix: str, english: dict[str, str]):
    """How the page words core's messages (core.data's or core.config's MESSAGES, `english`):
    `template(msg_id)`, the text of `prefix + msg_id` in the page's language, core's English
    where a catalog lacks it."""
    def template(msg_id: str) -> str:
        key = prefix + msg_id
        return catalog(current()).get(key) or catalog(DEFAULT).get(key) or english[msg_id]
    return template


DECIMAL_COMMA = ("de",)  # languages that write 2,5 where English writes 2.5


def decimal(value: float, digits: int = 1) -> str:
    """A number with `digits` decimals as the page's language writes it (2.5 / 2,5)."""
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if current() in DECIMAL_COMMA else text


def L(key: str):
    """A text fixed when the page is built: a marker the browser replaces by its translation."""
    import gradio as gr

    return gr.i18n.I18nData(key)  # tests/test_i18n.py finds keys with no text


def pick(lang: str | None) -> str | None:
    """One of our languages from a cookie value or a language tag ('de-AT' -> 'de')."""
    if not lang:
        return None
    base = lang.strip().lower().replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else None


def from_accept_language(header: str | None) -> str | None:
    """The first of our languages in an Accept-Language header, by its weight."""
    ranked = []
    for i, part in enumerate((header or "").split(",")):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            weight = 0.0
        ranked.append((-weight, i, tag))
    for _, _, tag in sorted(ranked):
        if pick(tag):
            return pick(tag)
    return None


def lang_of(request) -> str:
    """The language of the page behind a Gradio request: its cookie, else the browser's
    Accept-Language, else English."""
    if request is None:
        return DEFAULT
    try:
        cookie = request.cookies.get(COOKIE)
    except Exception:  # a request Gradio built without an HTTP request behind it
        cookie = None
    if pick(cookie):
        return pick(cookie)
    try:
        header = request.headers.get("accept-language")
    except Exception:
        header = None
    return from_accept_language(header) or DEFAULT


class speaking:
    """`with speaking(lang):` runs a handler in the language of its page."""

    def __init__(self, lang: str):
        self.lang = lang

    def __enter__(self):
        self.token = _current.set(self.lang)
        return self

    def __exit__(self, *exc):
        _current.reset(self.token)
        return False


@functools.cache
def gradio_i18n():
    """Gradio's translations for `launch(i18n=...)`: every language's catalog."""
    import gradio as gr

    # the browser shows these as they are (Gradio formats no message syntax in them)
    return gr.I18n(**{lang: dict(catalog(lang)) for lang in LANGUAGES})


# Runs first in the page's head, before Gradio starts (put_head_script_first): the page's
# language is the cookie's, and the cookie starts as the browser's language (one of ours, else
# English).
HEAD = """<script>
(function () {
  var known = %(known)s;
  var m = document.cookie.match(/(?:^|; )%(cookie)s=([a-z]+)/);
  var lang = m && known.indexOf(m[1]) >= 0 ? m[1] : null;
  if (!lang) {
    var tags = (navigator.languages && navigator.languages.length) ? navigator.languages
                                                                   : [navigator.language || ""];
    for (var i = 0; i < tags.length && !lang; i++) {
      var base = String(tags[i]).toLowerCase().split("-")[0];
      if (known.indexOf(base) >= 0) lang = base;
    }
    lang = lang || "%(default)s";
    document.cookie = "%(cookie)s=" + lang + "; path=/; max-age=31536000; SameSite=Lax";
  }
  try {
    Object.defineProperty(navigator, "language", {get: function () { return lang; }});
    Object.defineProperty(navigator, "languages", {get: function () { return [lang]; }});
  } catch (e) {}
  document.documentElement.lang = lang;
  // Gradio's busy marks ("queue: 2/3 |", "processing |") are English in every language: the
  // page's own words replace them as Gradio writes them
  var words = %(framework)s[lang];
  var fix = function (node) {
    var s = node.nodeValue, m = /^queue: (\\d+)\\/(\\d*) \\|$/.exec(s);
    var v = m ? words.queue.replace("{position}", m[1]).replace("{size}", m[2])
              : s === "processing |" ? words.processing : s;
    if (v !== s) node.nodeValue = v;  // each write is a change of its own: only real ones
  };
  var walk = function (node) {
    if (node.nodeType === 3) { fix(node); return; }
    for (var c = node.firstChild; c; c = c.nextSibling) walk(c);
  };
  if (lang !== "en" && window.MutationObserver) {
    new MutationObserver(function (records) {
      for (var i = 0; i < records.length; i++) {
        var r = records[i];
        if (r.type === "characterData") fix(r.target);
        else for (var j = 0; j < r.addedNodes.length; j++) walk(r.addedNodes[j]);
      }
    }).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
  }
})();
</script>"""


def head_script() -> str:
    """The script above, filled in (it needs the catalogs, so it is made when first asked)."""
    framework = {lang: {"queue": t("app.busy.queue", lang),
                        "processing": t("app.busy.processing", lang)} for lang in LANGUAGES}
    return HEAD % {"known": json.dumps(list(LANGUAGES)), "cookie": COOKIE, "default": DEFAULT,
                   "framework": json.dumps(framework, ensure_ascii=False)}

# The language switch: a new cookie, then the same page again in that language.
SWITCH_JS = """(lang) => {
  document.cookie = "%s=" + lang + "; path=/; max-age=31536000; SameSite=Lax";
  setTimeout(function () { window.location.reload(); }, 300);
  return lang;
}""" % COOKIE

def put_head_script_first() -> bool:
    """Gradio mounts `launch(head=...)` only after it has chosen the page's language, so the
    language script goes at the very top of the page Gradio serves instead (its own template,
    read through its own template loader). False, with the page still working, where Gradio's
    template no longer looks as expected."""
    try:
        import gradio.routes as routes
        from jinja2 import ChoiceLoader, DictLoader

        env = routes.templates.env
        name = "frontend/index.html"
        source = env.loader.get_source(env, name)[0]
        script = head_script()
        if "<head>" not in source or script in source:
            return script in source
        env.loader = ChoiceLoader([DictLoader({name: source.replace("<head>", "<head>" + script, 1)}),
                                   env.loader])
        return True
    except Exception:  # noqa: BLE001 - an unknown Gradio: the browser's language decides
        return False


PAGE_LANG_JS = "() => document.documentElement.lang || '%s'" % DEFAULT
