"""What people read: plots, validation pages and model cards (plain functions of plain data;
no Kedro)."""
