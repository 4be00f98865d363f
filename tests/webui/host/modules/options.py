"""Stand-in for modules.options: OptionInfo, options_section and the settings categories of v1.10.1."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.category_id = onchange, section, category_id


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


class OptionsCategory:
    def __init__(self, id, label):
        self.id, self.label = id, label


class OptionsCategories:
    def __init__(self):
        self.mapping = {}

    def register_category(self, category_id, label):
        if category_id in self.mapping:
            return category_id
        self.mapping[category_id] = OptionsCategory(category_id, label)


categories = OptionsCategories()
for _id, _label in (("saving", "Saving images"), ("sd", "Stable Diffusion"), ("ui", "User Interface"),
                    ("system", "System"), ("postprocessing", "Postprocessing"), ("training", "Training")):
    categories.register_category(_id, _label)


def category_of(info):
    """The heading the Settings page shows a section under (Options.dump_json's categories)."""
    category = categories.mapping.get(info.category_id)
    return "Uncategorized" if category is None else category.label
