"""Local stand-in for Tencent Cloud CI speech recognition (asr_jobs) and COS objects.

Independent of the asrd client side on purpose: it models the service, not the daemon.
"""
