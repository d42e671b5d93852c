"""asrd: Tencent Cloud CI speech-recognition jobs, TDMQ callbacks, results delivered to sinks."""

__version__ = "0.1.0"
