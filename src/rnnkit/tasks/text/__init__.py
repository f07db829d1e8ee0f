"""Text tasks: a character (or byte) language model that samples, and a sequence
classifier, both on rnnkit's recurrent layers."""
