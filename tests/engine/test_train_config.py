"""The training configuration (`aws_extension.training`): the seed's body, refusals naming the field, and
SageMaker's hyperparameters (every value a string) read back to the same configuration."""

from __future__ import annotations

import json

import pytest

from aws_extension.training import Concept, TrainingConfig, TrainingConfigError, parse_training_config

SEED_CONFIG_PARAMS = {  # the seed's `config_params` (API doc, PUT /inference/v2/{id}/run), names kept
    "concepts_list": [{
        "class_data_dir": "", "class_guidance_scale": 7.5, "class_infer_steps": 40, "class_negative_prompt": "",
        "class_prompt": "", "class_token": "", "instance_prompt": "hanportraittest123", "num_class_images_per": 0,
        "instance_data_dir": "s3://bucket/dataset/my-dataset", "instance_token": "", "is_valid": True,
        "n_save_sample": 1, "sample_seed": -1, "save_guidance_scale": 7.5, "save_infer_steps": 20,
        "save_sample_negative_prompt": "", "save_sample_prompt": "", "save_sample_template": "",
    }],
    "model_dir": "models/dreambooth/m", "model_name": "my_model",
    "pretrained_model_name_or_path": "models/dreambooth/m/working", "num_train_epochs": 100, "use_lora": True,
    "revision": "",
}


def test_the_seed_body_parses_and_use_lora_means_lora():
    config = parse_training_config("Stable-diffusion", SEED_CONFIG_PARAMS)
    assert config.train_type == "Lora" and config.is_lora
    assert config.concepts_list[0].instance_prompt == "hanportraittest123"
    assert (config.model_name, config.num_train_epochs) == ("my_model", 100)
    full = parse_training_config("Stable-diffusion", {**SEED_CONFIG_PARAMS, "use_lora": False})
    assert full.train_type == "Stable-diffusion" and not full.is_lora


def test_db_config_names_and_ours_are_taken():
    config = parse_training_config("Lora", {
        "concepts_list": [{"instance_prompt": "sks"}], "learning_rate": 1e-5, "lora_learning_rate": 2e-4,
        "lora_unet_rank": 16, "lora_txt_rank": 8, "train_batch_size": 2, "resolution": 768,
        "gradient_checkpointing": True, "mixed_precision": "bf16", "prior_loss_weight": 0.5, "seed": 7,
        "save_preview_every": 50, "max_train_steps": 1000, "save_state_every": 100})
    assert (config.lora_unet_rank, config.lora_txt_rank, config.resolution) == (16, 8, 768)
    assert config.total_steps(images=10) == 1000  # max_train_steps overrides the epochs
    assert parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}], "num_train_epochs": 3,
                                          "train_batch_size": 2}).total_steps(images=5) == 9


@pytest.mark.parametrize(("params", "field"), [
    ({"unknown_knob": 1}, "unknown_knob"),
    ({"concepts_list": [{"instance_prompt": "sks", "colour": "red"}]}, "concepts_list[0].colour"),
    ({"num_train_epochs": 0}, "num_train_epochs"),
    ({"num_train_epochs": 10**6}, "num_train_epochs"),
    ({"lora_unet_rank": 0}, "lora_unet_rank"),
    ({"lora_unet_rank": 1025}, "lora_unet_rank"),
    ({"lora_txt_rank": 2048}, "lora_txt_rank"),
    ({"resolution": 500}, "resolution"),
    ({"resolution": 4096}, "resolution"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"use_lora": "yes"}, "use_lora"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"concepts_list": []}, "concepts_list"),
    ({"concepts_list": [{"instance_prompt": ""}]}, "concepts_list[0].instance_prompt"),
    ({"concepts_list": [{"instance_prompt": "sks", "num_class_images_per": 2}]}, "concepts_list[0].class_prompt"),
])
def test_bad_values_are_refused_naming_the_field(params, field):
    body = {"concepts_list": [{"instance_prompt": "sks"}], **params}
    with pytest.raises(TrainingConfigError) as caught:
        parse_training_config("Lora", body)
    assert caught.value.field == field
    assert field.split(".")[-1].split("[")[0] in str(caught.value)


def test_an_unknown_train_type_is_refused():
    with pytest.raises(TrainingConfigError) as caught:
        parse_training_config("Hypernetwork", {"concepts_list": [{"instance_prompt": "sks"}]})
    assert caught.value.field == "train_type"


def test_hyperparameters_are_strings_and_read_back_to_the_same_config():
    config = parse_training_config("Stable-diffusion", {
        "concepts_list": [{"instance_prompt": "sks dog", "class_prompt": "dog", "num_class_images_per": 2},
                          {"instance_prompt": "zwx cat", "is_valid": False}],
        "learning_rate": 3e-6, "gradient_checkpointing": True, "stop_text_encoder": 0.25, "half_model": True})
    hyperparameters = config.to_hyperparameters()
    assert all(isinstance(v, str) for v in hyperparameters.values())
    assert hyperparameters["train_type"] == "Stable-diffusion"
    assert json.loads(hyperparameters["concepts_list"])[0]["class_prompt"] == "dog"
    # through a JSON file, as SageMaker writes it
    assert TrainingConfig.from_hyperparameters(json.loads(json.dumps(hyperparameters))) == config
    assert config.concepts_list[1] == Concept(instance_prompt="zwx cat", is_valid=False)


def test_a_bad_hyperparameter_string_is_refused_naming_it():
    hyperparameters = TrainingConfig().to_hyperparameters() | {"lora_unet_rank": "many"}
    with pytest.raises(TrainingConfigError) as caught:
        TrainingConfig.from_hyperparameters(hyperparameters)
    assert caught.value.field == "lora_unet_rank"


def test_seed_minus_one_is_a_random_seed_fixed_in_the_config_and_python_bools_are_read():
    config = parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}], "seed": -1})
    assert 0 <= config.seed < 2**32
    assert TrainingConfig.from_hyperparameters(config.to_hyperparameters()).seed == config.seed
    assert TrainingConfig.from_hyperparameters(config.to_hyperparameters() | {"half_model": "True"}).half_model


def test_several_concepts_each_need_a_prompt_and_carry_their_datasets():
    config = parse_training_config("Lora", {"concepts_list": [
        {"instance_prompt": "sks", "dataset_name": "reds", "class_dataset_name": "red-things"},
        {"instance_prompt": "off", "is_valid": False}, {"instance_token": "zwx", "instance_data_dir": "blues"}]})
    assert [(c.instance_prompt or c.instance_token, c.dataset_name or c.instance_data_dir)
            for c in config.trained_concepts] == [("sks", "reds"), ("zwx", "blues")]
    assert TrainingConfig.from_hyperparameters(config.to_hyperparameters()) == config
    with pytest.raises(TrainingConfigError) as caught:
        parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}, {"class_prompt": "dog"}]})
    assert caught.value.field == "concepts_list[1].instance_prompt"
    with pytest.raises(TrainingConfigError, match="at most 16"):
        parse_training_config("Lora", {"concepts_list": [{"instance_prompt": f"t{i}"} for i in range(17)]})
