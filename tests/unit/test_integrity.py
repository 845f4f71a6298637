"""The checks every file the tool loads gets (issue 26): the zip's CRCs, every field's type and shape,
remote paths refused, a checkpoint's hyper-parameters compared as data, class paths in an allow-list."""

import io
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lre_pl.class_paths import refused_class_path
from lre_pl.errors import InputError
from lre_pl.files import field_problem, zip_damage
from lre_pl.lightning.checkpoints import disagreement, local_checkpoint, read_checkpoint
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import JacobianMean, LinearRegression, estimator_of
from lre_pl.lre.operator import LinearRelationOperator


def operator(**changes) -> LinearRelationOperator:
    fields = {"weight": torch.eye(4), "bias": torch.zeros(4), "beta": 1.0, "layer": 1, "relation": "r",
              "model": "m", "n_train": 5, "seed": 0}  # fmt: skip
    return LinearRelationOperator(**{**fields, **changes})


def test_zip_damage_finds_a_cut_a_flip_a_pickle_and_a_folder(tmp_path):
    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(4096.0)}, buffer)
    data = buffer.getvalue()
    assert zip_damage(io.BytesIO(data)) is None
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    assert zip_damage(io.BytesIO(bytes(flipped))) == "its archive/data/0 fails its CRC check"
    assert zip_damage(io.BytesIO(bytes(flipped)), whole=False) is None  # the end alone is whole
    assert zip_damage(io.BytesIO(data[:-100])) == "cut short or damaged: File is not a zip file"
    assert zip_damage(io.BytesIO(pickle.dumps({}))) == "cut short or damaged: File is not a zip file"
    assert zip_damage(tmp_path) == "Is a directory"
    assert zip_damage(tmp_path / "none") == "No such file or directory"


def test_field_problem_names_the_first_field_of_a_wrong_type_or_shape():
    good = vars(operator())
    shapes = {"weight": (float, "d", "d"), "bias": (float, "d")}
    assert field_problem(good, LinearRelationOperator, shapes) is None
    cases = {
        "layer": (True, "layer is bool True, not int | str"),
        "n_train": (5.0, "n_train is float 5.0, not int"),
        "beta": (float("nan"), "beta is float nan, not float"),
        "train_prompts": (["a", 1], "train_prompts is list ['a', 1], not list[str]"),
        "weight": (torch.eye(4, dtype=torch.int64), "weight is a torch.int64 tensor [4, 4], not a float tensor [d, d]"),
        "bias": (torch.zeros(5), "bias is a torch.float32 tensor [5], not a float tensor [d]"),
    }  # fmt: skip
    for name, (value, problem) in cases.items():
        assert field_problem({**good, name: value}, LinearRelationOperator, shapes) == problem


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"layer": "eight"}, "layer is 'eight', not 'emb' or a block index"),
        ({"beta": -1.0}, "beta is -1.0, not a positive number"),
        ({"weight": torch.full((4, 4), float("inf"))}, "weight or bias holds NaN or infinity"),
        ({"model": None}, "model is NoneType None, not str"),
    ],
)
def test_an_operator_file_with_a_wrong_field_is_one_line(tmp_path, changes, problem):
    path = tmp_path / "op.pt"
    torch.save({**vars(operator()), **changes}, path)
    with pytest.raises(InputError) as refused:
        LinearRelationOperator.load(path)
    assert str(refused.value) == (
        f"{str(path)!r} is not a valid lre_pl operator file ({problem}): re-create it with lre-pl fit"
    )
    assert LinearRelationOperator.load(operator().save(tmp_path / "good.pt")).layer == 1


def test_a_bundle_with_a_wrong_shape_is_one_line(tmp_path):
    d, layers = 4, [1, 2]
    bundle = Bundle(
        model="m", relation="r", category="factual", seed=0, n_train=2, layers=layers, state_layers=["emb", 0, 1, 2],
        weights=torch.zeros(2, d, d), biases=torch.zeros(2, d), train_subject_states=torch.zeros(2, 2, d),
        train_output_states=torch.zeros(2, d), train_biases=torch.zeros(2, 2, d),
        train_jacobian_states=torch.zeros(2, 2, d), train_object_tokens=torch.zeros(2, dtype=torch.long),
        test_subjects=["a"], test_objects=["b"], test_subject_states=torch.zeros(1, 4, d),
        test_output_states=torch.zeros(1, d), test_lm_predictions=["b"], test_prompt_template="{} is",
    )  # fmt: skip
    assert Bundle.load(bundle.save(tmp_path / "good.pt")).layers == layers
    for name, value, problem in [
        ("weights", torch.zeros(3, d, d), "weights is a torch.float32 tensor [3, 4, 4], not a float tensor [layer, d, d]"),
        ("test_subject_states", torch.zeros(1, 3, d), "test_subject_states is a torch.float32 tensor [1, 3, 4], not a float tensor [m, state_layer, d]"),
        ("test_objects", ["b", "c"], "test_objects has 2 entries for 1 test subjects"),
    ]:  # fmt: skip
        path = replace(bundle, **{name: value}).save(tmp_path / f"{name}.pt")
        with pytest.raises(InputError) as refused:
            Bundle.load(path)
        assert str(refused.value) == (
            f"{str(path)!r} is not a readable lre_pl bundle ({problem}): delete it and rerun the sweep, which "
            "estimates it again"
        )


def test_a_checkpoint_is_read_from_local_files_only():
    assert local_checkpoint("file:///tmp/a%20b/lre.ckpt") == Path("/tmp/a b/lre.ckpt")
    assert local_checkpoint("runs/lre.ckpt") == Path("runs/lre.ckpt")
    for url in ("https://example.org/x.ckpt", "s3://bucket/x.ckpt", "file://otherhost/x.ckpt", "HTTP://a/b"):
        with pytest.raises(
            InputError, match=r"is a remote address: lre_pl reads checkpoints from local files only"
        ):
            read_checkpoint(url)


def test_a_checkpoint_without_lre_state_is_one_line(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "lre": {"layers": [1], "weights": torch.zeros(1, 4, 4)}}, path)
    with pytest.raises(InputError) as refused:
        read_checkpoint(path)
    assert str(refused.value).startswith(
        f"ckpt_path {str(path)!r} is not a readable lre_pl checkpoint (no biases, estimated): give "
    )
    saved = {"layers": [1], "weights": torch.zeros(1, 4, 4), "biases": torch.zeros(1, 4), "estimated": True}
    torch.save({"state_dict": {"log_beta": [0.0]}, "lre": saved}, path)
    with pytest.raises(InputError, match=r"\(log_beta is list \[0.0\], not a float tensor \[layer\]\)"):
        read_checkpoint(path)


def test_hyper_parameters_are_compared_as_data():
    saved = {"layers": [4, 8], "beta": 1.0, "estimator": None, "_instantiator": "x"}
    assert disagreement(saved, {"layers": [4, 8], "beta": 1, "estimator": None}) is None
    assert disagreement(saved, {"layers": [4], "beta": 1.0, "estimator": None}) == ("layers", [4, 8], [4])
    assert disagreement({"layers": 8}, {"layers": [8]}) is None
    old = {"estimator": {"class_path": "lre_pl.estimators.LinearRegression", "init_args": {"ridge": 0.01}}}
    new = {"estimator": LinearRegression(ridge=0.01).config}
    assert disagreement(old, new) is None
    assert disagreement(old, {"estimator": LinearRegression(ridge=0.1).config}) is not None
    assert disagreement({"gone": 1}, {}) == ("gone", 1, "(no such option)")


def test_a_checkpoint_estimator_is_resolved_among_lre_pl_s_own():
    assert estimator_of({"class_path": "lre_pl.lre.estimators.JacobianMean"}) == JacobianMean()
    assert estimator_of(LinearRegression(0.5).config) == LinearRegression(0.5)
    with pytest.raises(
        InputError, match=r"^estimator \{'class_path': 'os.system'\} is not one of lre_pl's estimators"
    ):
        estimator_of({"class_path": "os.system"})


def test_jsonargparse_s_refusal_becomes_one_line():
    message = (
        "Problem with given class_path 'evilmod.Evil': Importing 'evilmod.Evil' is not allowed, denied by"
    )
    assert refused_class_path(message).startswith(
        "class_path 'evilmod.Evil' is not allowed: a config may name only"
    )
    assert refused_class_path("Parser key 'model.layers': expected an int") is None
