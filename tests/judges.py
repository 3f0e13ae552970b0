"""Judges a user might write (``evaluation.judge.kind: python``), importable by the flow and its PPO worker alike
as ``tests.judges:<function>``."""


def words_of_praise(prompts: list[str], responses: list[str]) -> list[float]:
    """How many of a few positive words each response uses: a programmatic judge any data can be scored by."""
    praise = {"great", "good", "fast", "like", "love"}
    return [float(sum(word.strip(".,!?").lower() in praise for word in response.split())) for response in responses]


def broken(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge whose service is down."""
    raise ConnectionError("the scoring service at 127.0.0.1:9 refused the connection")


def not_a_number(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge that returns NaN for the second response."""
    return [float("nan") if i == 1 else 0.0 for i in range(len(responses))]


def hangs(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge whose service never answers: the call never returns."""
    import threading

    threading.Event().wait()
    return []
