"""Pure domain rules: no network, database or file I/O.

Everything here takes plain values and returns plain values, so each rule can be tested
exhaustively. Small pure data libraries (``us``, ``zipcodes``) are allowed.
"""
