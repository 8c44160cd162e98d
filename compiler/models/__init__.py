"""Models, data and training recipes: the zoo, user model files, the shipped trained weights and
Fashion-MNIST sample, and the training recipe that made them."""
