"""stemcli: music source separation on a plain CPU."""

__version__ = "0.1.0"
