"""Reading `deploy/template.yaml` as data in the AWS tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


class _Loader(yaml.SafeLoader):
    """CloudFormation's short tags (`!Sub x`) read as their long form (`{"Fn::Sub": x}`, `!Ref x` as `{"Ref": x}`)."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _construct)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader with the tags above)


def substitute(value: Any, stack_name: str, account: str = "123456789012", region: str = "us-east-1") -> Any:
    """`{"Fn::Sub": "${AWS::StackName}-x"}` → "sd-x" (pseudo parameters only; anything else stays as is)."""
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        pseudo = {"AWS::StackName": stack_name, "AWS::AccountId": account, "AWS::Region": region}
        return re.sub(r"\$\{(AWS::\w+)\}", lambda m: pseudo.get(m.group(1), m.group(0)), value["Fn::Sub"])
    if isinstance(value, dict):
        return {k: substitute(v, stack_name, account, region) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, stack_name, account, region) for v in value]
    return value
