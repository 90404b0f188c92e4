# A package only so that installs ship sitecustomize.py; the recipe puts this folder on PYTHONPATH.
