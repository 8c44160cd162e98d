"""Tile plans and the instructions a tile becomes, shared by `tile` (which costs candidate plans
with the timing model's formulas) and `convert-qnn-to-accel` (which emits the chosen plan)."""
