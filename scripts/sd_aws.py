"""Loaded by the WebUI: registers the extension's callbacks. The logic lives in aws_extension.webui."""

from aws_extension.webui.callbacks import register
from aws_extension.webui.switch import CloudSwitchScript  # noqa: F401 - the host collects Script classes from here

register()
