"""Data preparation: raw images -> validated, de-duplicated, filtered and anonymised
ArrayRecord shards with a manifest and a data card, as an Apache Beam pipeline.

Run it with ``python launch.py --mode prep --config configs/prep_<name>.py --workdir DIR``.
Needs the optional ``requirements-prep.txt`` (Apache Beam, OpenCV); training does not.
"""
