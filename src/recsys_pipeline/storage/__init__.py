"""How the project writes files: always-valid JSON (``jsonio``) and the names of files being
written (``partial``: ``<name>.partial-<host>-<pid>``). No Kedro imports."""
