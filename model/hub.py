"""wenzhi's classes in transformers' Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForMaskedLM`, ... and `pipeline(...)` load a wenzhi folder natively (no remote code).

`import wenzhi` calls `install()`, which registers nothing yet: it asks to be called back when
transformers' auto modules are imported (wrapt's post-import hooks), so a command that never
touches transformers (`wenzhi kg ...`) does not pay for importing torch and the model. The config
is registered with `transformers.models.auto.configuration_auto`, the models with
`modeling_auto`; both are idempotent.
"""
from __future__ import annotations


def register_config(_module=None) -> None:
    from transformers import AutoConfig

    from wenzhi.model.configuration import WenzhiConfig

    AutoConfig.register(WenzhiConfig.model_type, WenzhiConfig, exist_ok=True)


def register_models(_module=None) -> None:
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    from wenzhi.model import modeling as m

    register_config()
    for auto, model in ((AutoModel, m.WenzhiModel), (AutoModelForPreTraining, m.WenzhiForPretraining),
                        (AutoModelForMaskedLM, m.WenzhiForMaskedLM),
                        (AutoModelForTokenClassification, m.WenzhiForTokenClassification),
                        (AutoModelForSequenceClassification, m.WenzhiForSequencePairClassification)):
        auto.register(m.WenzhiConfig, model, exist_ok=True)


def install() -> None:
    """Register with transformers once its auto modules are imported (now, if they already are)."""
    import wrapt

    wrapt.register_post_import_hook(register_config, "transformers.models.auto.configuration_auto")
    wrapt.register_post_import_hook(register_models, "transformers.models.auto.modeling_auto")
