"""The city-platform side of Lifeline: where verified gateway batches are stored (``store``) and from where
they are delivered (sources). The sink core that ties them together is ``lifeline.tools.platform_sink``."""
