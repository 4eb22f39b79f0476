"""Teleradiology study router.

A DICOM C-STORE SCP that archives what modalities and PACS send, works out the US state where
each exam was performed, assigns the study to a radiologist licensed in that state, and keeps
the professional-component billing record apart from infrastructure cost.
"""

__version__ = "0.1.0"
