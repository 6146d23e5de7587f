"""BrushTrain's data side: masks, BrushData shard reading and writing, the datamodule."""
