"""A small module used as a chunking fixture."""

import os

CONSTANT = 3


def helper(x):
    return x + CONSTANT


# Decorated functions keep their decorator and comment.
@staticmethod
def decorated():
    return os.getcwd()


class Widget:
    def method(self):
        def inner():
            return 1

        return inner()


async def fetch():
    return None
