"""Everything that is not the subject of optimization: the spec, weights, images, labels and the judge."""
