"""Step 2 in a real browser: data-check messages in the page's language naming the user's own
file, a bad upload or dataset name that leaves the data in use as it was, input boxes that show
what is in use, and the sample data without warnings about itself."""
import pytest

from .conftest import open_studio, wait_text, wait_value

SOURCE = "#knob-data-source textarea, #knob-data-source input"


def visit_data(page) -> None:
    page.click("#tab-data-button")
    page.wait_for_selector("#data-upload input[type=file]", state="attached")


def upload(page, path) -> None:
    """Upload a file as a person does: a file shown in the box is removed (×) first."""
    if page.locator("#data-upload input[type=file]").count() == 0:
        page.locator("#data-upload button").first.click()
        page.wait_for_selector("#data-upload input[type=file]", state="attached")
    page.set_input_files("#data-upload input[type=file]", str(path))


def source(page) -> str:
    return page.locator(SOURCE).first.input_value()


def upload_box(page) -> str:
    """The upload box's text without its line breaks ("sums\n.csv" -> "sums.csv")."""
    return "".join(page.inner_text("#data-upload").split())


def messages(page) -> str:
    return page.inner_text("#data-messages")


def use_good_table(page, tmp_path, name: str, header: str) -> None:
    good = tmp_path / name
    good.write_text(f"{header}\n" + "".join(f"Was ist {a} + {a}?,{2 * a}\n" for a in range(1, 6))
                    + "Was ist 1 + 1?,2\nWas ist 2 + 2?,4\n", encoding="utf-8")
    upload(page, good)
    wait_value(page, SOURCE, f"upload:{name}")
    wait_text(page, "#data-preview", "Was ist 5 + 5?")
    wait_value(page, "#data-question input", header.split(",")[0])


def still_in_use(page, name: str, question: str) -> None:
    assert source(page) == f"upload:{name}"
    assert page.locator("#data-question input").input_value() == question
    assert "Was ist 5 + 5?" in page.inner_text("#data-preview")


@pytest.mark.parametrize("locale", ["de-DE"])
def test_german_messages_name_the_users_file_and_bad_uploads_lose_nothing(studio, page, tmp_path):
    url, _ = studio
    open_studio(page, url)
    visit_data(page)
    use_good_table(page, tmp_path, "summen.csv", "Frage,Antwort")
    wait_text(page, "#data-messages", "Bereit fürs Training")
    shown = messages(page)
    assert "2 doppelte Fragen (wiederholen eine frühere Zeile) in den Zeilen 6, 7" in shown
    assert "duplicate" not in shown

    # an empty file and a binary file named .csv: refused in German by the user's name
    empty = tmp_path / "leer.csv"
    empty.write_bytes(b"")
    upload(page, empty)
    wait_text(page, "#data-messages", "Die Datei leer.csv ist leer.")
    shown = messages(page)
    assert "Die bisherigen Daten bleiben in Verwendung: summen.csv" in shown
    assert "The file" not in shown and "-leer.csv" not in shown
    still_in_use(page, "summen.csv", "Frage")
    assert "leer.csv" not in upload_box(page)

    binary = tmp_path / "bild.csv"
    binary.write_bytes(bytes(range(256)) * 64)
    upload(page, binary)
    wait_text(page, "#data-messages", "Die Datei bild.csv ist kein UTF-8-Text")
    assert "UTF-8 text" not in messages(page)
    still_in_use(page, "summen.csv", "Frage")
    assert "bild.csv" not in upload_box(page)  # the refused file is not shown

    # a table without answers: the warning in German too
    questions = tmp_path / "nur-fragen.csv"
    questions.write_text("Frage\nWas ist 1 + 2?\nWas ist 3 + 4?\n", encoding="utf-8")
    upload(page, questions)
    wait_value(page, SOURCE, "upload:nur-fragen.csv")
    wait_text(page, "#data-messages", "Keine Spalte mit Antworten gefunden")
    assert "No answer column" not in messages(page)


def test_inputs_show_the_data_in_use_and_the_sample_data_has_no_warnings(studio, page, tmp_path):
    url, _ = studio
    open_studio(page, url)
    visit_data(page)
    use_good_table(page, tmp_path, "sums.csv", "question,answer")
    wait_text(page, "#data-messages", "Ready for training")
    assert "sums.csv" in upload_box(page)

    # a dataset name that cannot be loaded is refused; the upload stays in use
    hub = page.locator("#data-hub textarea, #data-hub input").first
    hub.fill("nobody-here/no-such-dataset")
    page.get_by_role("button", name="Use this dataset").click()
    wait_text(page, "#data-messages", "no-such-dataset")
    assert "The data in use stays as it was: sums.csv" in messages(page)
    still_in_use(page, "sums.csv", "question")

    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"")
    upload(page, bad)
    wait_text(page, "#data-messages", "The file broken.csv is empty.")
    still_in_use(page, "sums.csv", "question")
    assert "broken.csv" not in upload_box(page)

    # the sample data: the upload and the typed dataset name are cleared, no repeats warning
    page.click("#data-sample")
    wait_value(page, SOURCE, "builtin:arithmetic")
    wait_text(page, "#data-messages", "200 rows")
    wait_text(page, "#data-messages", "Ready for training")
    assert "duplicate" not in messages(page) and "⚠️" not in messages(page)
    page.wait_for_function("() => !document.querySelector('#data-upload').innerText.includes('csv')")
    assert hub.input_value() == ""
