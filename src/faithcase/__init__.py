"""faithcase: do matched features of two SAEs mean the same thing?"""

__version__ = "0.1.0"
