"""The gradio tabs: pure gradio + the middleware client, no WebUI imports (also served standalone)."""
