"""Model families, one package each (net, loader, family algorithm, spec), and the layers they share."""
