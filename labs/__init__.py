"""The labs that ship with cnmlab, installed as the data package ``cnmlab.labs_data``.

This folder is the single source of the lab files: pyproject maps it under ``cnmlab`` so a
built wheel carries it and an editable install's import finder points here. The file exists
only so both kinds of install can locate the folder with ``importlib.resources``.
"""
