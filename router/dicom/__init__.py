"""The DICOM network layer: the only code that imports pynetdicom.

The C-STORE SCP (:mod:`router.dicom.scp`) hands each received instance to an intake service
injected at construction; tag extraction (:mod:`router.dicom.extract`) turns a data set into
plain values; :mod:`router.dicom.scu` sends (demo, forwarding).
"""
