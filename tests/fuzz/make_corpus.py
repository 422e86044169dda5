#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/ (run it after changing a seed here).

The Redis and Kafka targets read strings as a 2-byte little-endian length then the bytes
(fuzz_input.h); the others read their input as text.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack('<H', len(data)) + data


def pairs(items):
    return b''.join(s(k) + s(v) for k, v in items)


VALID = [('specversion', '1.0'), ('id', 'e-1'), ('source', 'fuzz'), ('type', 'io.x')]

SEEDS = {
    'redis_wire': {
        'valid_minimal': pairs(VALID + [('data', 'hi')]),
        'valid_full': pairs(VALID + [('subject', 's'), ('time', '2024-05-01T12:00:00.5+02:00'),
                                     ('datacontenttype', 'application/json'),
                                     ('dataschema', 'urn:x'), ('partitionkey', 'k'),
                                     ('h:traceparent', '00-ab'), ('h:', ''),
                                     ('data', b'\x00\xff{}')]),
        'bad_duplicate': pairs(VALID + [('id', 'again')]),
        'bad_unknown_field': pairs(VALID + [('colour', 'red')]),
        'bad_utf8': pairs(VALID + [('subject', b'\xc3\x28')]),
        'bad_time': pairs(VALID + [('time', '10000-01-01T00:00:00Z')]),
        'space_in_name': pairs([('h:a b', 'c d'), ('x\ny', '\\')]),
    },
    'kafka_wire': {
        'valid_minimal': b'\x01' + s('key') + s('payload') + pairs(
            [('ce_id', 'e-1'), ('ce_source', 'fuzz'), ('ce_specversion', '1.0'),
             ('ce_type', 'io.x')]),
        'valid_full': b'\x00' + s('') + s(b'\x00data') + pairs(
            [('ce_id', 'e-1'), ('ce_source', 'fuzz'), ('ce_specversion', '1.0'),
             ('ce_type', 'io.x'), ('ce_time', '2024-05-01T12:00:00.123456789Z'),
             ('ce_subject', 's'), ('ce_dataschema', 'urn:x'), ('content-type', 'text/plain'),
             ('ce_partitionkey', 'pk'), ('ce_traceparent', '00-ab'), ('X-Request-Id', '7'),
             ('ce_type', 'io.y'), ('eventbus-attempt', '2'), ('ce_Upper', 'u')]),
        'bad_specversion': b'\x00' + s('') + s('') + pairs(
            [('ce_id', 'e'), ('ce_source', 's'), ('ce_specversion', '0.3'), ('ce_type', 't')]),
        'bad_reserved': b'\x00' + s('') + s('') + pairs(
            [('ce_id', 'e'), ('ce_source', 's'), ('ce_specversion', '1.0'), ('ce_type', 't'),
             ('ce_ce_x', '1')]),
        'bad_time': b'\x00' + s('') + s('') + pairs(
            [('ce_id', 'e'), ('ce_source', 's'), ('ce_specversion', '1.0'), ('ce_type', 't'),
             ('ce_time', 'infinite-future')]),
    },
    'iso_duration': {
        'seconds': b'PT2S', 'mixed': b'P1DT2H30M', 'fraction': b'PT1M30.5S', 'weeks': b'P2W',
        'comma': b'PT0,25S', 'zero': b'PT0S', 'bad_years': b'P1Y', 'bad_order': b'PT1S2M',
        'bad_empty': b'PT', 'tiny': b'PT0.0000000004S', 'long': b'P36500D',
    },
    'task_json': {
        'request_minimal': b'{"id":"t-1","type":"noop"}',
        'request_full': b'{"id":"t-1","type":"echo","input":{"a":[1,2.5,"x",null,true]},'
                        b'"timeout":"PT30S","retry":{"max_attempts":3,"initial_backoff":"PT0.1S",'
                        b'"max_backoff":"PT10S","multiplier":2,"jitter":0.1},'
                        b'"metadata":{"trace":"abc"}}',
        'request_bad_field': b'{"id":"t-1","type":"noop","colour":1}',
        'request_bad_timeout': b'{"id":"t-1","type":"noop","timeout":"PT-1S"}',
        'request_control_char': b'{"id":"t\\u0001","type":"noop"}',
        'result_succeeded': b'{"id":"t-1","type":"echo","status":"succeeded","output":{"a":1},'
                            b'"attempts":1,"duration_ms":1.5,"request_event_id":"e-1",'
                            b'"completed_at":"2024-05-01T12:00:00Z","error":null,'
                            b'"metadata":{"k":"v"}}',
        'result_failed': b'{"id":"t-1","type":"echo","status":"failed","output":null,'
                         b'"attempts":3,"duration_ms":0,"completed_at":"2024-05-01T12:00:00.25Z",'
                         b'"error":{"kind":"timeout","message":"too slow"}}',
        'not_json': b'{"id":',
    },
    'http_task_body': {
        'no_id': b'{"type":"noop","input":{}}',
        'with_id': b'{"id":"client-1","type":"echo","input":{"x":"\\u00e9"},"timeout":"PT5S",'
                   b'"metadata":{"a":"b"}}',
        'retry': b'{"type":"call","retry":{"max_attempts":1000,"multiplier":1e300}}',
        'deep': b'{"type":"echo","input":' + b'[' * 70 + b']' * 70 + b'}',
        'array': b'[1,2,3]',
        'bad_utf8': b'{"type":"\xff"}',
    },
}

for target, seeds in SEEDS.items():
    directory = os.path.join(HERE, 'corpus', target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(data)
