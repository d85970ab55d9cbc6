"""The taming VQGAN comparison of ``arcvq-reproduce --model vqgan``: rows, image-folder data, training
with learning-curve evaluation, and the command that ties them to the shared report machinery."""
