"""rlhf"""
