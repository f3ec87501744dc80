"""Radio ingress adapters. Each implements :class:`lifeline.gateway.ingress.base.IngressAdapter`."""
