from asvae_kit.testing import ConformanceSuite

class TestExamplePlugin(ConformanceSuite):
    distribution = "asvae-kit-example-plugin"
