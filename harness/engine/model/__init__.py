"""Model definitions (plain nn.Modules) and the paged attention they call."""
