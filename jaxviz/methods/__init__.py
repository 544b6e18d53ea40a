"""What the capabilities compute, over any model of the model protocol (:mod:`jaxviz.nn.protocol`):
activations, feature visualisation (:mod:`.featurevis`, also as :mod:`.features`), attribution
(:mod:`.attribution`), weight statistics, and the sharding and compile-count helpers they share."""
