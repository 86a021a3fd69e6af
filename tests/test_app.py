"""The explorer through Streamlit's AppTest: every page, uploads, the slider, figure specs.

Runs are kept short: a two-step timestep grid, and the empirical demo (the exact optimal
denoiser over the memorising demo's members, no network) wherever the test is not about a
particular model. Streamlit's caches are process-wide, so later tests reuse earlier sweeps.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets import digits_uint8
from core import demo_names, photos
from core.models.registry import DEMO_DIR, read_manifest
from core.attacks import ATTACK_NAMES
from explorer import reading, state, uploads, verdicts
from explorer.choices import DEFAULT_MODEL, GRID_ENV, MODEL_ENV, PIXEL_VS_LATENT, Choices, parse_grid
from tests.helpers import out_of_domain_files

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "explorer" / "app.py")
FAST = "digits-empirical"
CAPTIONED = "digits-sd-captioned"
GRID = "10,50"
TIMEOUT = 180
PAGES = ["check", "collection", "audit", "timesteps", "local_mean", "compare", "latent", "about"]


@pytest.fixture(scope="module", autouse=True)
def _environment(tmp_path_factory):
    """A private score cache and a short grid for every run in this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMA_CACHE_DIR", str(tmp_path_factory.mktemp("score-cache")))
        patch.setenv(GRID_ENV, GRID)
        patch.delenv(MODEL_ENV, raising=False)
        yield


def start(monkeypatch, model: str | None = None, page: str | None = None) -> AppTest:
    if model:
        monkeypatch.setenv(MODEL_ENV, model)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def chart(at: AppTest, key: str) -> dict:
    """The plotly spec of the chart drawn with ``key``."""
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith(f"-{key}"):
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart with key {key!r}; have {[e.proto.id.split('-')[-1] for e in at.get('plotly_chart')]}")


def array(value) -> np.ndarray:
    """A plotly spec array: a list, or plotly's typed-array encoding {dtype, bdata, shape}."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def vlines(spec: dict) -> list:
    return [s["x0"] for s in spec["layout"].get("shapes", []) if s.get("x0") == s.get("x1")]


def demo_png(which: str, position: int = 0) -> tuple[str, bytes]:
    """A PNG of one digit of the empirical demo's split, exactly as the model was built on it."""
    manifest = state.get_model(FAST, "cpu").manifest
    image_id = manifest["member_ids" if which == "member" else "heldout_ids"][position]
    buffer = io.BytesIO()
    Image.fromarray(digits_uint8(16)[int(image_id.split("-")[-1])]).save(buffer, format="PNG")
    return f"{which}-{image_id}.png", buffer.getvalue()


def texts(elements) -> str:
    return " | ".join(str(e.value) for e in elements)


# ----------------------------------------------------------------------------- every page


def test_a_newcomer_starts_on_the_check_page_with_the_memorising_demo(monkeypatch):
    at = start(monkeypatch)
    assert at.sidebar.selectbox(key="model_choice").value == DEFAULT_MODEL
    assert at.title[0].value == "Check an image" and not at.error
    assert at.button(key="check_start").label == "Show me a member and a held-out image"


def upload_for(demo: str) -> tuple[str, bytes, str]:
    """A member to upload: a digit PNG, for the photo demo one of its member photos, and for the
    captioned demo a zip holding the digit PNG and its caption as a sidecar NAME.txt."""
    manifest = read_manifest(DEMO_DIR / demo)
    if manifest["dataset"]["name"] == photos.DATASET:
        if not photos.data_file().is_file():
            pytest.skip(f"{photos.data_file()} is absent (a clone without ../shared): the photo demo has no images")
        image = photos.photos_by_ids(manifest["member_ids"][:1])[0]
        buffer = io.BytesIO()
        Image.fromarray(((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(buffer, "PNG")
        return "member-photo.png", buffer.getvalue(), "image/png"
    name, png = demo_png("member")
    if demo != CAPTIONED:
        return name, png, "image/png"
    from core.datasets import digit_captions

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, png)
        archive.writestr(name.replace(".png", ".txt"), digit_captions([name[len("member-"):-len(".png")]])[0])
    return "member.zip", buffer.getvalue(), "application/zip"


@pytest.mark.parametrize("demo", demo_names())
def test_every_bundled_demo_works_on_every_page(monkeypatch, demo):
    monkeypatch.setenv(GRID_ENV, "50")  # the sweeps here are shared with the latent page's test
    at = start(monkeypatch, demo)
    at.file_uploader(key="check_uploads").set_value([upload_for(demo)]).run()
    assert [m.label for m in at.metric][:2] == [reading.statistic_label("sima"), "p-value"], texts(at.error)
    at.session_state["explorer_large_t"] = False  # one timestep per model keeps this test short
    for page in PAGES[1:]:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.message for e in at.exception])
        assert not at.error, (page, texts(at.error))
        assert len(at.title) == 1
        if page in ("audit", "timesteps", "local_mean"):
            assert at.get("plotly_chart"), f"{page} drew no figure"
    at.switch_page("views/local_mean.py").run()
    assert len(chart(at, "lm_panels")["data"]) == 5


PHOTO_DEMO = "cifar10-ddpm-memorising"


def test_the_photo_demo_without_its_data_scores_uploads_and_says_where_the_data_goes(monkeypatch, tmp_path):
    """A clone without ../shared: no page fails, and the pages that need the photos name the file."""
    monkeypatch.setenv(photos.FILE_ENV, str(tmp_path / "absent.npz"))
    state.model_split.clear()  # a split another test loaded with the data present would still be cached
    at = start(monkeypatch, PHOTO_DEMO)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    at.file_uploader(key="check_uploads").set_value([("mine.png", buffer.getvalue(), "image/png")]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "absent.npz" in texts(at.warning) and photos.FILE_ENV in texts(at.warning)
    assert reading.statistic_label("sima") in [m.label for m in at.metric]
    for page in ("audit", "collection", "local_mean", "timesteps"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.message for e in at.exception])
        assert "absent.npz" in texts(at.error) + texts(at.warning) + texts(at.info), page


def test_sidebar_lists_every_demo_loads_the_model_and_describes_it(monkeypatch):
    at = start(monkeypatch, FAST)
    picker = at.sidebar.selectbox(key="model_choice")
    assert set(demo_names()) <= set(picker.options) and len(picker.options) == len(demo_names()) + 2
    info = texts(at.sidebar.caption)
    assert "empirical model" in info and "16×16 pixels" in info and "trained on 256 known images" in info
    attack = at.sidebar.selectbox(key="attack")
    assert attack.value == "sima" and len(attack.options) == len(ATTACK_NAMES) >= 7
    assert "2 timesteps, 10 to 50" in info


def test_sidebar_choices_persist_across_pages(monkeypatch):
    at = start(monkeypatch, FAST)
    model = at.sidebar.selectbox(key="model_choice").value
    at.sidebar.selectbox(key="attack").set_value("loss")
    at.sidebar.text_input(key="grid").set_value("20,40")
    at.run()
    for page in ("about", "compare"):
        at.switch_page(f"views/{page}.py").run()
        assert at.sidebar.selectbox(key="attack").value == "loss"
        assert at.sidebar.text_input(key="grid").value == "20,40"
        assert at.sidebar.selectbox(key="model_choice").value == model


def test_a_model_that_cannot_load_gets_one_line_and_no_traceback(monkeypatch, tmp_path):
    at = start(monkeypatch, FAST)
    at.sidebar.selectbox(key="model_choice").set_value("A local model folder…").run()
    at.sidebar.text_input(key="model_folder").set_value(str(tmp_path / "missing")).run()
    assert not at.exception
    assert len(at.sidebar.error) == 1 and "missing" in at.sidebar.error[0].value
    assert "The model could not be loaded" in texts(at.info)


def test_a_bad_grid_is_explained(monkeypatch):
    at = start(monkeypatch, FAST)
    at.sidebar.text_input(key="grid").set_value("abc").run()
    assert not at.exception and "START:STOP:STEP" in at.sidebar.error[0].value
    # the page says what is wrong, not "choose a model"
    assert "The timesteps in the sidebar cannot be used" in texts(at.info) and "Choose a model" not in texts(at.info)
    at.sidebar.text_input(key="grid").set_value("0:2000:500").run()
    assert "run from 0 to 999: 3 of the 5 timesteps asked for lie outside" in texts(at.sidebar.warning)


def test_a_lora_that_cannot_load_gets_one_line_and_no_traceback(monkeypatch, tmp_path):
    at = start(monkeypatch, CAPTIONED)
    at.sidebar.text_input(key="model_lora").set_value(str(tmp_path / "no-adapter")).run()
    assert not at.exception
    assert len(at.sidebar.error) == 1 and "no-adapter" in at.sidebar.error[0].value


# ----------------------------------------------------------------------------- check an image


def test_the_captioned_demo_checks_its_own_digits_with_their_captions_or_the_empty_prompt(monkeypatch):
    from core.datasets import digit_captions

    at = start(monkeypatch, CAPTIONED)
    assert at.sidebar.radio(key="condition").value == "caption"
    baselines = {reading.attack_title("gap"), reading.attack_title("clid")}
    assert baselines <= set(at.sidebar.selectbox(key="attack").options)
    manifest = state.get_model(CAPTIONED, "cpu").manifest
    member, heldout = manifest["member_ids"][0], manifest["heldout_ids"][0]
    at.multiselect(key="check_split").set_value([f"member {member}", f"held-out {heldout}"]).run()
    assert not at.exception and not at.warning, texts(at.warning)
    shown = texts(at.caption)
    for caption in digit_captions([member, heldout]):
        assert f"Conditioned on “{caption}”" in shown
    editor, table = at.dataframe  # the editable captions, then the results
    assert list(editor.value["caption"]) == list(table.value["caption"]) == digit_captions([member, heldout])
    captioned = [float(m.value) for m in at.metric if m.label == "p-value"]
    assert len(captioned) == 2 and captioned[0] < captioned[1]  # the member looks more member-like
    at.sidebar.radio(key="condition").set_value("empty").run()
    assert not at.exception and "not used" in texts(at.caption) and "Conditioned on" not in texts(at.caption)
    assert "caption" not in at.dataframe[1].value.columns
    assert baselines.isdisjoint(at.sidebar.selectbox(key="attack").options)


def test_an_upload_without_a_caption_is_asked_for_one(monkeypatch):
    at = start(monkeypatch, CAPTIONED)
    at.sidebar.radio(key="condition").set_value("caption").run()
    at.file_uploader(key="check_uploads").set_value([(*demo_png("member"), "image/png")]).run()
    assert not at.exception and not at.metric
    assert "Type a caption for member-" in texts(at.warning)


def test_a_long_run_waits_for_the_user_with_its_time_estimate(monkeypatch):
    from explorer import widgets

    monkeypatch.setattr(widgets, "LONG_RUN_S", 0.0)
    at = start(monkeypatch, FAST)
    at.file_uploader(key="check_uploads").set_value([(*demo_png("member"), "image/png")]).run()
    assert not at.metric and "model evaluations, timed on one batch" in texts(at.info)
    at.button(key="check_estimate_start").click().run()
    assert not at.exception and [m.label for m in at.metric][:2] == [reading.statistic_label("sima"), "p-value"]


def test_uploading_images_gives_scores_p_values_and_verdicts(monkeypatch):
    at = start(monkeypatch, FAST)
    member, heldout = demo_png("member"), demo_png("heldout")
    at.file_uploader(key="check_uploads").set_value([(*member, "image/png"), (*heldout, "image/png")]).run()
    assert not at.exception and all("member" in e.value for e in at.error), texts(at.error)
    p_values = [float(m.value) for m in at.metric if m.label == "p-value"]
    assert len(p_values) == 2
    # The exact optimal denoiser recognises its own member: the smallest possible p-value.
    # The reference is the held-out half that did not choose t (the audit's report half).
    n_reference = len(state.get_model(FAST, "cpu").manifest["heldout_ids"]) // 2
    assert p_values[0] == pytest.approx(1 / (1 + n_reference), rel=2e-3)  # shown to 3 digits
    assert p_values[1] > 0.05
    assert "Likely a member" in texts(at.error) and "Not flagged" in texts(at.success)
    assert "Ground truth from the known split: **member**" in texts(at.caption)
    table = at.dataframe[0].value
    assert list(table["image"]) == [member[0], heldout[0]]
    hist = chart(at, "check_hist_0")
    assert [d["name"].split(" (")[0] for d in hist["data"]] == ["training members", "held-out"]
    assert vlines(hist) == [pytest.approx(table.iloc[0, 1])]
    assert len(chart(at, "check_curve_1")["data"]) == 5


def test_moving_the_fpr_changes_the_verdict_threshold(monkeypatch):
    at = start(monkeypatch, FAST)
    at.file_uploader(key="check_uploads").set_value([(*demo_png("heldout", 3), "image/png")]).run()
    p = float(next(m.value for m in at.metric if m.label == "p-value"))
    at.select_slider(key="check_fpr").set_value(0.1).run()
    assert "alpha = 0.1" in texts(at.caption)
    assert float(next(m.value for m in at.metric if m.label == "p-value")) == p


def test_a_broken_file_is_reported_and_the_good_ones_are_scored(monkeypatch):
    at = start(monkeypatch, FAST)
    at.file_uploader(key="check_uploads").set_value([("broken.png", b"not an image", "image/png"), (*demo_png("member"), "image/png")]).run()
    assert not at.exception
    assert any(e.value.startswith("broken.png") for e in at.error)
    assert len(at.dataframe[0].value) == 1


def test_bundled_examples_can_be_scored_without_uploading(monkeypatch):
    if not state.examples():
        pytest.fail("assets/examples holds no example images")
    at = start(monkeypatch, FAST)
    at.button(key="check_start").click().run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
    assert {"member", "held-out"} <= set(at.dataframe[0].value["truth (known split)"])


def test_check_links_each_image_to_its_local_mean(monkeypatch):
    at = start(monkeypatch, FAST)
    name, data = demo_png("member")
    at.file_uploader(key="check_uploads").set_value([(name, data, "image/png")]).run()
    at.button(key="check_lm_0").click().run()
    assert not at.exception
    assert at.title[0].value == "Local mean"
    assert at.radio(key="lm_source").value == "Sent from Check an image"
    assert name in at.subheader[0].value


# ----------------------------------------------------------------------------- timestep explorer


def test_slider_moves_the_marked_t_and_redraws_from_the_cache(monkeypatch):
    import core.audit

    calls = []
    real = core.audit.run_audit
    monkeypatch.setattr(core.audit, "run_audit", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = start(monkeypatch, FAST)
    at.sidebar.text_input(key="grid").set_value("5,10,50").run()  # a grid no other test sweeps
    at.switch_page("views/timesteps.py").run()
    assert len(calls) == 1
    slider = at.select_slider(key="explorer_t")
    assert vlines(chart(at, "explorer_curve")) == [slider.value]
    for t in (5, 50):
        at.select_slider(key="explorer_t").set_value(t).run()
        assert vlines(chart(at, "explorer_curve")) == [t]
        assert chart(at, "explorer_hist")["layout"]["title"]["text"] == f"Distributions at t = {t}"
    assert len(calls) == 1, "moving the slider recomputed the sweep"
    curve = chart(at, "explorer_curve")
    assert [d["name"] for d in curve["data"]] == ["AUC", "TPR@1%FPR", "t chosen on the selection half"]
    assert curve["data"][0]["x"] == [5, 10, 50, 300, 500, 700, 900]  # large t added, where the curves merge
    assert len(at.get("image")) == 2  # the two galleries


def test_a_verdict_uses_the_chosen_t_not_one_moved_on_another_page_or_model(monkeypatch, tiny_model_dir):
    at = start(monkeypatch, FAST)
    at.sidebar.text_input(key="grid").set_value("10,30,50").run()
    at.switch_page("views/timesteps.py").run()
    chosen = int(at.metric[2].value)
    elsewhere = next(t for t in (10, 30, 50) if t != chosen)
    at.select_slider(key="explorer_t").set_value(elsewhere).run()
    at.switch_page("views/check.py").run()
    at.button(key="check_start").click().run()
    assert at.select_slider(key="check_t").value == chosen, "the check page took the explorer's t"
    assert f"t = {chosen}: the t the audit of this model's own split chose" in texts(at.caption)
    # moved on this page: kept, said, and one press takes it back
    at.select_slider(key="check_t").set_value(elsewhere).run()
    assert f"t = {elsewhere}, moved by you" in texts(at.caption)
    at.button(key="check_t__back").click().run()
    assert at.select_slider(key="check_t").value == chosen
    # another model opens at its own t (no split here: the middle of the grid, and it says so)
    at.select_slider(key="check_t").set_value(elsewhere).run()
    at.sidebar.selectbox(key="model_choice").set_value("A local model folder…").run()
    at.sidebar.text_input(key="model_folder").set_value(str(tiny_model_dir)).run()
    at.file_uploader(key="check_uploads").set_value([("random.png", random_png(8, colour=True), "image/png")]).run()
    assert not at.exception and at.select_slider(key="check_t").value == 30
    assert "no audit chose a t for this model" in texts(at.caption)


def random_png(size: int, colour: bool = False) -> bytes:
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3) if colour else (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_the_model_cannot_judge_get_no_verdict(monkeypatch):
    at = start(monkeypatch, FAST)
    files = out_of_domain_files() + [demo_png("heldout", 2)]
    at.file_uploader(key="check_uploads").set_value([(n, b, "image/png") for n, b in files]).run()
    assert not at.exception
    table = at.dataframe[0].value
    verdicts_ = list(table[[c for c in table.columns if c.startswith("verdict")][0]])
    assert verdicts_[:3] == ["cannot judge"] * 3 and verdicts_[3] == "not flagged"
    assert texts(at.warning).count("This model cannot judge this image") == 3
    assert "**0 of 4** images flagged as likely members at 1% FPR; **3** this model cannot judge" in texts(at.markdown)


# ----------------------------------------------------------------------------- audit


def test_audit_page_shows_both_rocs_the_metrics_and_downloads(monkeypatch):
    at = start(monkeypatch, FAST, "audit")
    linear, log = chart(at, "audit_roc"), chart(at, "audit_roc_log")
    assert [d["name"] for d in linear["data"]][-1] == "chance" and len(linear["data"]) == 2
    assert linear["layout"]["xaxis"]["type"] == "linear"
    assert log["layout"]["xaxis"]["type"] == "log" and log["layout"]["yaxis"]["type"] == "log"
    assert [m.label for m in at.metric] == ["AUC", "ASR", "TPR@1%FPR", "TPR@0.1%FPR"]
    assert float(at.metric[0].value) > 0.9  # the exact memoriser is easy to audit
    assert list(at.dataframe[0].value["metric"]) == ["AUC", "ASR", "TPR@1%FPR", "TPR@0.1%FPR"]
    assert len(at.dataframe[1].value) == len(state.get_model(FAST, "cpu").manifest["heldout_ids"]) + 256
    assert [b.label for b in at.get("download_button")] == ["Per-image CSV", "Result JSON", "HTML report (opens offline)"]
    assert "Blind baseline (no model queries)" in texts(at.caption) and not at.warning  # the demo split is not separable


def test_audit_of_uploaded_zips(monkeypatch):
    at = start(monkeypatch, FAST, "audit")
    at.radio(key="audit_source").set_value("Upload members and non-members").run()

    def zipped(which: str) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for i in range(6):
                archive.writestr(*demo_png(which, i))
        return buffer.getvalue()

    at.file_uploader(key="audit_members").set_value(("members.zip", zipped("member"), "application/zip"))
    at.file_uploader(key="audit_nonmembers").set_value(("nonmembers.zip", zipped("heldout"), "application/zip"))
    at.run()
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert len(at.dataframe[1].value) == 12
    assert float(at.metric[0].value) == 1.0
    # 3 + 3 images on the report half: the [1, 1] interval means little, and the page says so
    assert "Only 3 members and 3 non-members are measured: too few" in texts(at.warning)


# ----------------------------------------------------------------------------- local mean


def test_local_mean_page_contrasts_a_member_and_a_held_out_image(monkeypatch):
    at = start(monkeypatch, FAST, "local_mean")
    at.radio(key="lm_source").set_value("A training member").run()
    at.select_slider(key="lm_t").set_value(10).run()
    assert not at.exception
    panels = chart(at, "lm_panels")
    assert [d["type"] for d in panels["data"]] == ["heatmap"] * 5
    titles = [a["text"] for a in panels["layout"]["annotations"]]
    assert titles == ["query x₀", "local mean μ", "model's x̂₀", "|x₀ − μ|", "|x₀ − x̂₀|"]
    # For the exact optimal denoiser x0_hat is the local mean, and a member's local mean at
    # small t is the member itself.
    x0, mu, x0_hat = (array(panels["data"][i]["z"]) for i in range(3))
    assert np.allclose(mu, x0, atol=1e-3) and np.allclose(x0_hat, mu, atol=1e-3)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Effective neighbours"]) == pytest.approx(1.0, abs=1e-3)
    assert float(metrics["Member: distance to the nearest training image"]) == 0
    assert float(metrics["Held-out: distance to the nearest training image"]) > 1
    weights = array(chart(at, "lm_weights")["data"][0]["x"])
    assert len(weights) == state.TOP_K and weights[-1] == pytest.approx(1.0, abs=1e-3)
    effective = chart(at, "lm_effective")
    assert effective["layout"]["yaxis"]["type"] == "log" and len(effective["data"]) == 3
    assert vlines(effective) == [10]
    assert len(chart(at, "lm_contrast")["data"]) == 10


# ----------------------------------------------------------------------------- compare, latent


def test_compare_starts_cheap_says_how_long_and_runs_the_chosen_attacks(monkeypatch):
    monkeypatch.setenv(GRID_ENV, "0:100:10")
    at = start(monkeypatch, FAST, "compare")
    # defaults: the one-query attacks, a few timesteps, 100 images a side
    assert at.multiselect(key="compare_attacks").value == ["sima", "loss"]
    assert at.multiselect(key="compare_t").value == [0, 30, 60, 90]
    assert at.number_input(key="compare_n").value == 100
    assert "200 images × 4 timesteps: about" in texts(at.caption) and "timed on one batch of each attack" in texts(at.caption)
    at.multiselect(key="compare_t").set_value([10, 50]).run()
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    table = at.dataframe[0].value
    assert list(table["attack"]) == ["sima", "loss"] and list(table["queries / image at t"]) == [1, 1]
    # Both attacks are perfect on the exact memoriser: the paired test must not name a winner.
    paired = at.dataframe[1].value
    assert list(paired["A vs B"]) == ["sima vs loss"] and list(paired["verdict (AUC)"]) == ["not distinguishable at 95%"]
    assert "SimA" in texts(at.caption) and "(estimated" in texts(at.caption)
    roc = chart(at, "compare_roc")
    assert [d["name"].split(" (")[0] for d in roc["data"]] == ["sima", "loss", "chance"]
    assert chart(at, "compare_cost")["layout"]["xaxis"]["type"] == "log"


def test_a_long_run_can_be_stopped_and_run_again(monkeypatch):
    """The Stop button's press, as Streamlit delivers it: the callback marks the run stopped and
    the running script is interrupted at its next progress update (a rerun)."""
    import core.audit
    import explorer.state
    import streamlit
    from explorer import progress

    drawn = []

    def pressed_at_once(run: str, what: str):
        remove = progress.stop_button(run, what)
        drawn.append(what)
        progress._stop(run)
        return remove

    def interrupted(*args, progress=None, **kwargs):
        progress(0, 1)
        streamlit.rerun()

    with monkeypatch.context() as patch:
        patch.setattr(explorer.state, "stop_button", pressed_at_once)
        patch.setattr(core.audit, "run_audit", interrupted)
        at = start(monkeypatch, FAST)
        at.sidebar.text_input(key="grid").set_value("20,60").run()  # a grid no other test sweeps
        at.switch_page("views/timesteps.py").run()
    assert drawn and drawn[0].startswith("scoring with SimA on digits-empirical")
    assert not at.exception and "Scoring with SimA on digits-empirical was stopped" in texts(at.warning)
    assert not at.get("plotly_chart")
    at.button(key=next(b.key for b in at.button if b.label == "Run it again")).click().run()
    assert not at.exception and not at.warning and at.get("plotly_chart")


def test_pixel_vs_latent_audits_each_demo_on_its_own_split(monkeypatch):
    missing = [n for n in PIXEL_VS_LATENT if n not in demo_names()]
    if missing:
        pytest.fail(f"bundled demos missing: {missing}")
    monkeypatch.setenv(GRID_ENV, "50")
    at = start(monkeypatch, FAST, "latent")
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    table = at.dataframe[0].value
    assert list(table["model"])[:3] == list(PIXEL_VS_LATENT)
    assert list(table["kind"])[:3] == ["pixel", "latent", "latent"]
    assert texts(at.markdown).count("paired AUC difference") == 2  # each latent demo tested against the pixel one
    assert len(chart(at, "latent_recon")["data"]) == 4 * 3


def test_the_latent_page_shows_the_measured_bottleneck_study_and_its_conclusion(monkeypatch):
    from core import bottleneck

    study = bottleneck.load_study()
    at = start(monkeypatch, FAST, "latent")
    assert not at.exception and not at.error
    curve = chart(at, "bottleneck_curve")["data"]
    latent = next(trace for trace in curve if trace["name"] == "latent, trained on posterior samples")
    assert list(array(latent["y"])) == [r["auc"] for r in sorted(study["rows"], key=lambda r: r["beta"])]
    assert any(trace["name"].startswith("pixel model") for trace in curve)
    shown = texts(at.markdown)
    assert bottleneck.direction(study).sentence() in shown and bottleneck.recommendation(study) in shown
    if study.get("curve"):
        assert len(array(chart(at, "bottleneck_training")["data"][0]["y"])) == len(study["curve"])


# ----------------------------------------------------------------------------- helpers under the pages


def test_load_uploads_reads_bytes_and_zips_in_memory():
    name, data = demo_png("member")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", data)
        archive.writestr("b.txt", b"ignored")
    loaded = uploads.load_uploads([(name, data), ("set.zip", buffer.getvalue()), ("bad.png", b"??")], (1, 16, 16))
    assert loaded.ids == [name, "set.zip:a.png"]
    assert loaded.images.shape == (2, 1, 16, 16) and torch.equal(loaded.images[0], loaded.images[1])
    assert [p.source for p in loaded.errors] == ["bad.png"]


def test_check_leaves_an_image_out_of_its_own_reference():
    stats = np.array([[1.0], [2.0], [3.0], [4.0]])
    reference = verdicts.Reference([10], "lower", stats, None, ("a", "b", "c", "d"), "test")
    # statistic 2.0 ("b"): its own row would tie with it; left out, 1 of 3 others scores as member-like
    inside, outside = verdicts.check(reference, 10, [2.0, 2.0], 0.5, ["b", "z"])
    assert inside.left_out and inside.n_reference == 3 and inside.p_value == pytest.approx((1 + 1) / (1 + 3))
    assert not outside.left_out and outside.n_reference == 4 and outside.p_value == pytest.approx((1 + 2) / (1 + 4))


def test_the_check_page_holds_the_false_discovery_rate_when_asked(monkeypatch):
    at = start(monkeypatch, FAST)
    files = [(*demo_png("member", i), "image/png") for i in range(2)] + [(*demo_png("heldout", 5), "image/png")]
    at.file_uploader(key="check_uploads").set_value(files).run()
    assert "BH-adjusted p" not in at.dataframe[0].value.columns
    at.toggle(key="check_fdr_on").set_value(True).run()
    table = at.dataframe[0].value
    assert not at.exception and "BH-adjusted p" in table.columns
    assert list(table["verdict at 1% FDR"]) == ["likely member", "likely member", "not flagged"]
    assert all(table["BH-adjusted p"].astype(float) >= table["p-value"].astype(float) - 1e-12)


def test_the_collection_page_tests_uploaded_images_and_says_where_t_came_from(monkeypatch):
    at = start(monkeypatch, FAST, "collection")
    assert at.title[0].value == "Check a collection" and not at.error
    calibrated = state.calibration(Choices(FAST, "cpu", "sima", (10, 50)))
    report_heldout = [i for i, image_id in enumerate(state.get_model(FAST, "cpu").manifest["heldout_ids"])
                      if image_id not in calibrated.selection_ids]
    files = [(*demo_png("member", i), "image/png") for i in range(6)] + [(*demo_png("heldout", report_heldout[0]), "image/png")]
    at.file_uploader(key="collection_uploads").set_value(files).run()
    assert not at.exception, [e.message for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Collection images (n)"] == "7" and metrics["Reference non-members (m)"] == "249"
    assert float(metrics["p-value"]) < 1e-3 and "Likely used in training" in texts(at.error)
    assert "model card's audit" in texts(at.caption) and "1 of your images is also in the reference" in texts(at.info)
    assert "images are needed" in texts(at.markdown)
    bars = chart(at, "collection_histogram")["data"]
    assert [int(array(b["y"]).sum()) for b in bars] == [7, 249]  # every collection image and every reference image drawn


def test_the_collection_page_tries_the_models_own_members(monkeypatch):
    at = start(monkeypatch, FAST, "collection")
    at.button(key="collection_start").click().run()
    assert not at.exception and "Likely used in training" in texts(at.error)
    assert {m.label: m.value for m in at.metric}["Collection images (n)"] == "20"


def test_parse_grid_drops_steps_beyond_the_model():
    assert parse_grid("0:1200:400", 1000) == (
        (0, 400, 800), "This model's timesteps run from 0 to 999: 1 of the 4 timesteps asked for lie outside and were left out.",
    )
    with pytest.raises(Exception, match="within this model's range"):
        parse_grid("2000", 1000)


def test_config_keeps_the_app_offline_private_and_quiet():
    import tomllib

    config = tomllib.loads((Path(APP).parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["fileWatcherType"] == "none" and config["server"]["maxUploadSize"] > 0
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"
    assert "base" in config["theme"]
