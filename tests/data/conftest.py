import pytest
from datafiles import FileServer


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()
