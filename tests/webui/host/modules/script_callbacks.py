"""Stand-in for modules.script_callbacks: the on_* registrations the extension uses, and their runners."""

callbacks = {"ui_tabs": [], "ui_settings": [], "script_unloaded": [], "app_started": [], "after_component": []}


def clear_callbacks():
    for registered in callbacks.values():
        registered.clear()


def on_ui_tabs(callback):
    callbacks["ui_tabs"].append(callback)


def on_ui_settings(callback):
    callbacks["ui_settings"].append(callback)


def on_script_unloaded(callback):
    callbacks["script_unloaded"].append(callback)


def on_app_started(callback):
    callbacks["app_started"].append(callback)


def on_after_component(callback):
    callbacks["after_component"].append(callback)


def ui_tabs_callback():
    return [tab for callback in callbacks["ui_tabs"] for tab in (callback() or [])]


def ui_settings_callback():
    for callback in callbacks["ui_settings"]:
        callback()


def script_unloaded_callback():
    for callback in callbacks["script_unloaded"]:
        callback()


def after_component_callback(component, **kwargs):
    """Called by the host for each component it creates, with the component's constructor arguments."""
    for callback in callbacks["after_component"]:
        callback(component, **kwargs)
