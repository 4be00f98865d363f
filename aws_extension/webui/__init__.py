"""The only code that imports the WebUI's `modules.*`: callbacks, settings and the cloud switch.

Everything here is imported when `scripts/sd_aws.py` loads (the host takes the extension folder off
`sys.path` afterwards, so nothing may be imported lazily later).
"""
