"""文知 wenzhi: Chinese knowledge-enhanced pretraining and knowledge-base question answering.

Sub-packages, in the one direction data flows: `wenzhi.kg` → `wenzhi.retrieval` → `wenzhi.model`
→ `wenzhi.qa_service`. In the repository they are the top-level folders `kg/ retrieval/ model/
qa_service/`; pyproject.toml's `package-dir` maps them under this package, so an installed wenzhi
owns one import name and a user's own `model.py` cannot shadow it.
"""
__version__ = "0.1.0"
