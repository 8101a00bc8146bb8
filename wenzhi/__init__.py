"""文知 wenzhi: Chinese knowledge-enhanced pretraining and knowledge-base question answering.

Sub-packages, in the one direction data flows: `wenzhi.kg` → `wenzhi.retrieval` → `wenzhi.model`
→ `wenzhi.qa_service`. In the repository they are the top-level folders `kg/ retrieval/ model/
qa_service/`; pyproject.toml's `package-dir` maps them under this package, so an installed wenzhi
owns one import name and a user's own `model.py` cannot shadow it.

Importing wenzhi registers its model with transformers' Auto classes (model/hub.py), lazily: the
registration runs when transformers' auto modules are first imported.
"""
__version__ = "0.1.0"

from wenzhi.model.hub import install as _install_auto_classes

_install_auto_classes()
