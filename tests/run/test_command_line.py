from wrncifar.run.command_line import null_group_overrides


def test_null_for_a_switchable_group_becomes_a_deletion_and_nothing_else_changes() -> None:
    args = ["logger=null", "callbacks=null", "ckpt_path=null", "model.net.dropout=0.1", "logger.csv.name=null"]
    assert null_group_overrides(args) == ["~logger", "~callbacks", *args[2:]]
