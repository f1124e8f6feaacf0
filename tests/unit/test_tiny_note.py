"""The one-line note under a BT/ID table trained on the tiny random-init student."""
import json

from idrm_ray.run.outputs import STUDY_COMMAND, print_tiny_student_note, tiny_student_note


def test_note_only_for_the_tiny_student_and_names_the_study():
    assert STUDY_COMMAND in tiny_student_note("tiny") and "\n" not in tiny_student_note("tiny")
    assert tiny_student_note("/models/llama") == tiny_student_note(None) == ""


def test_printed_from_the_run_config_when_two_methods(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(json.dumps({"student": {"name_or_path": "tiny"}}))
    print_tiny_student_note(tmp_path, [{"method": "bt"}])
    assert capsys.readouterr().out == ""  # one method: no BT/ID comparison to qualify
    print_tiny_student_note(tmp_path, [{"method": "bt"}, {"method": "id"}])
    assert STUDY_COMMAND in capsys.readouterr().out
    (tmp_path / "config.yaml").write_text(json.dumps({"student": {"name_or_path": "/m/smollm"}}))
    print_tiny_student_note(tmp_path, [{"method": "bt"}, {"method": "id"}])
    print_tiny_student_note(tmp_path / "missing", [{"method": "bt"}, {"method": "id"}])
    assert capsys.readouterr().out == ""
