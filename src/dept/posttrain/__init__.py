"""After pre-training: model folders, and what turns a run into models people use.

```python
from dept.posttrain import load_model, consolidate, adapt, finetune, export_folder, generate, Sampling
model = load_model("runs/demo-compare/spec_opt", source="en_bible")   # a run's source, a model folder, an export
print(generate(model, "In the beginning", Sampling(seed=1)).text)
export_folder(model, "exported/en_bible")                            # AutoModelForCausalLM.from_pretrained(...)
consolidate("runs/demo-compare/spec_opt")                            # -> runs/demo-compare/spec_opt/consolidated
```
"""

from dept.posttrain.adapt import AdaptSettings, adapt
from dept.posttrain.consolidate import consolidate
from dept.posttrain.finetune import finetune, load_classifier, predict
from dept.posttrain.folder import ModelFolder
from dept.posttrain.generate import Sampling, generate
from dept.posttrain.hf import export_folder, import_exported
from dept.posttrain.load import load_model

__all__ = ["AdaptSettings", "ModelFolder", "Sampling", "adapt", "consolidate", "export_folder", "finetune",
           "generate", "import_exported", "load_classifier", "load_model", "predict"]
