from stemcli_hpss.separator import HPSSSeparator

__all__ = ["HPSSSeparator"]
