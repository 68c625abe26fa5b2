"""Networks: the 2D Swin UNETR and the SimSiam heads built on its encoder."""
