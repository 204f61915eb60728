"""common.murmur2 gives aiokafka's (Kafka's) answer for every input: a different hash
would send a key to another partition."""

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from common.murmur2 import murmur2


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_the_same_hash_as_aiokafka_for_any_bytes(data):
    assert murmur2(data) == aiokafka_murmur2(data)


def test_known_values_of_kafka_s_java_client():
    """Values from Kafka's own UtilsTest.testMurmur2 (clients/src/test/.../UtilsTest.java)."""
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for data, java in cases.items():
        assert murmur2(data) == java & 0xFFFFFFFF
