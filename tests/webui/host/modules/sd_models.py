"""Stand-in for modules.sd_models: CheckpointInfo and get_closet_checkpoint_match."""

import os

checkpoints_list = {}


class CheckpointInfo:
    def __init__(self, filename, sha256=None):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.sha256 = sha256
        self.shorthash = sha256[:10] if sha256 else None
        self.title = f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    def register(self):
        checkpoints_list[self.title] = self

    def calculate_shorthash(self):
        from modules import hashes

        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return None
        self.shorthash = self.sha256[0:10]
        return self.shorthash


def get_closet_checkpoint_match(search_string):
    if search_string in checkpoints_list:
        return checkpoints_list[search_string]
    return next((info for info in checkpoints_list.values() if search_string in info.title), None)
