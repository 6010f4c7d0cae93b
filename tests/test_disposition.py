import pytest

from gateway.disposition import content_disposition


@pytest.mark.parametrize(
    ("filename", "inline", "expected"),
    [
        ("report.pdf", False, 'attachment; filename="report.pdf"'),
        ("report.pdf", True, 'inline; filename="report.pdf"'),
        (
            "naïve café.txt",
            False,
            "attachment; filename=\"na_ve caf_.txt\"; filename*=UTF-8''na%C3%AFve%20caf%C3%A9.txt",
        ),
        (
            'say "hi".txt',
            False,
            "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt",
        ),
        (
            "日本.txt",
            False,
            "attachment; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
    ],
)
def test_content_disposition(filename: str, inline: bool, expected: str) -> None:
    assert content_disposition(filename, inline=inline) == expected
