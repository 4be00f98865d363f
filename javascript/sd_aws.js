// sd-aws: mark the Generate buttons while "Generate on cloud" is on, so the user sees where the job runs.
onUiLoaded(function () {
    ["txt2img", "img2img"].forEach(function (tab) {
        var checkbox = gradioApp().querySelector("#sd_aws_" + tab + "_enabled input[type=checkbox]");
        var generate = gradioApp().querySelector("#" + tab + "_generate");
        if (!checkbox || !generate) {
            return;
        }
        var update = function () {
            generate.classList.toggle("sd-aws-cloud", checkbox.checked);
            generate.title = checkbox.checked ? "Generates on the cloud (Amazon SageMaker)" : "";
        };
        checkbox.addEventListener("change", update);
        update();
    });
});
