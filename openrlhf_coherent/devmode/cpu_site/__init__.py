# A package only so that installs ship sitecustomize.py; launch.with_cpu_site puts this folder on PYTHONPATH.
