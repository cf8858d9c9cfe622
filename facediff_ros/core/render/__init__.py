"""Stage 4, rendering: the RGB-D rasteriser and UV textures (atlas, procedural, projected)."""
